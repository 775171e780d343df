"""The BCE vs CE study (README.md): its runs, their records and its results page."""
