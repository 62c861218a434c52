from cnncli.cli import main

main()
