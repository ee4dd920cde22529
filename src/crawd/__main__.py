from crawd.cli import main

main()
