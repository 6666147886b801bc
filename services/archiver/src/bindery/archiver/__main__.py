"""`python -m bindery.archiver`: run the archiver service."""

from bindery.archiver.app import main

main()
