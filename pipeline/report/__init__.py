"""The HTML report of a run: the page, its figures, and the rankings and effects they show."""
