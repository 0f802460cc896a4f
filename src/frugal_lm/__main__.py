from frugal_lm.cli import main

main()
