"""`cnn report`: a run (or several) as one self-contained HTML page.

facts.py reads what a run directory holds; evaluation.py runs the test split through the best
checkpoint; sections.py and pictures.py turn them into the page's parts, with the figures of
cnncli.plots and cnncli.show and the tables of cnncli.summary; compare.py is the page of several
runs; html.py the page's building blocks; build.py puts it together and writes it. Nothing heavy
is imported here.
"""
