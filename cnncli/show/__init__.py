"""`cnn show`: look inside a CNN -- learned filters, feature maps and class activation maps.

subject.py loads what is looked at (a run or an untrained model, and an image prepared as
`cnn predict` does); layers.py names layers, captures their outputs and reads their
receptive fields; filters.py, features.py and cam.py compute each picture's numbers;
figures.py draws them. Nothing heavy is imported here.
"""
