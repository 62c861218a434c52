from cnncli.entry import main

main()
