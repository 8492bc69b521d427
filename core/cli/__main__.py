from edgefm.cli.app import main

main()
