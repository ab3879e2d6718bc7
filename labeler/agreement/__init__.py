"""How well one labeler agrees with another (a judge with humans, humans with each other), per
segment and per video: ``compute`` joins and scores, ``metrics`` holds the statistics, ``report``
writes report.md / report.json. Run it as ``python -m labeler.agreement``."""
