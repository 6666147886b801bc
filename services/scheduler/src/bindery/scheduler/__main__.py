"""`python -m bindery.scheduler`: run the scheduler service."""

from bindery.scheduler.app import main

main()
