from sepcli.cli import main

main()
