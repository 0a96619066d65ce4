from converters.cli import main

main()
