from autoquant.cli import main

main()
