from fsx.cli import main

main()
