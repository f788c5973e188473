from meshtrace.cli import main

main()
