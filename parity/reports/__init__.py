"""Reports: the JSON report and its diff, the per-cell buffer maps, and the self-contained HTML page.

May import problem and judge."""
