from edgefm.cli import main

main()
