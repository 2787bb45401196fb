"""Read-only questions in DuckDB: the connection (views + macros), named SQL files, crosstabs, statistics, and the
filter / drift / spurious reports with their plots and HTML page.

Every function takes ``db`` (a LanceDB path/URI, or a connection from :func:`lance_concepts.connect`)
and returns plain data (a pyarrow Table, or a result object with ``.table``, ``.records()``,
``.summary()`` and ``.plot(path)``); the CLI commands ``filter``, ``drift``, ``spurious`` and
``report`` are thin shells over them.

Statistics, in plain words
--------------------------
* *prevalence* of a concept in a set of images: the share of images whose weight for the concept is
  above ``min_weight`` (default 0: the concept is in the image's sparse decomposition at all), with a
  95% Wilson score interval.
* *mean weight*: the average weight over all images of the set (absent = 0), with a normal 95%
  interval (mean +- 1.96 standard errors).
* *change test* (drift, split shift): two-sided two-proportion test of the prevalence in a window (a
  split) against the reference window (split): the pooled z-test when every expected cell count is at
  least 5, otherwise Fisher's exact test (two-sided p = twice the one-sided p on the observed side of
  the expected count, capped at 1).
* *over-representation test* (spurious): the same test, one-sided (label more often than the rest).
* *homogeneity test* (drift alerts): chi-square test that a concept's prevalence is the same in
  every window (G - 1 degrees of freedom), so that one noisy reference window cannot raise an alert.
* *Benjamini-Hochberg*: p-values of all tests of one report are turned into q-values (false-discovery
  rate); a finding needs ``q < alpha`` (default 0.05) **and** an effect size (``min_change`` /
  ``min_lift``) so that tiny but "significant" shifts in large tables are not reported.
* *lift* = P(concept | label) / P(concept); *nPMI* = log(P(label, concept) / (P(label) P(concept)))
  / -log P(label, concept), in [-1, 1] (0 = independent, 1 = always together).
* *Jensen-Shannon divergence* (base 2, in [0, 1]) between a window's concept distribution (the
  concepts' share of the window's total weight) and the reference window's.
"""
