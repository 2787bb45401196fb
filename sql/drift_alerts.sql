-- drift_alerts: concepts whose prevalence in some window moved away from the reference window.
--
-- Every concept seen in at least min_support images, every window against the reference window
-- (the first one unless reference is given): two-sided pooled two-proportion z-test, then
-- Benjamini-Hochberg over all (window, concept) tests. A concept is reported when its prevalence is
-- not the same in all windows (chi-square test of homogeneity, BH over concepts, q < alpha; p from
-- the Wilson-Hilferty approximation) and a window has q < alpha with
-- |prevalence - reference prevalence| >= min_change. The z-test is used for all counts here; the
-- Python / CLI drift uses Fisher's exact test where expected counts are below 5 and the exact
-- chi-square distribution.
--
-- @ident time_column = timestamp      a timestamp or date column of images
-- @param every       VARCHAR = 'month'  day | week | month | quarter | year
-- @param reference   VARCHAR = NULL   a date inside the reference window, e.g. '2024-01-01' (default: first window)
-- @param min_weight  DOUBLE  = 0.0    a concept counts as present above this weight
-- @param min_support BIGINT  = 10     concepts present in fewer images overall are not tested
-- @param min_change  DOUBLE  = 0.10   smallest absolute change of prevalence to report
-- @param alpha       DOUBLE  = 0.05   false discovery rate
WITH base AS (
    SELECT date_trunc($every, {{time_column}}) AS win, concept_ids, concept_weights
    FROM images WHERE concept_ids IS NOT NULL AND {{time_column}} IS NOT NULL
),
n AS (SELECT win, count(*) AS n FROM base GROUP BY win),
ref AS (
    SELECT coalesce(date_trunc($every, CAST($reference AS TIMESTAMP)), (SELECT min(win) FROM n)) AS win
),
u AS (SELECT win, unnest(concept_ids) AS cid, unnest(concept_weights) AS w FROM base),
k AS (SELECT win, cid, count(*) FILTER (WHERE w > $min_weight) AS x FROM u GROUP BY win, cid),
tested AS (SELECT cid FROM k GROUP BY cid HAVING sum(x) >= $min_support),
grid AS (  -- every (window, tested concept), zero counts included
    SELECT n.win, n.n, t.cid, coalesce(k.x, 0) AS x
    FROM n CROSS JOIN tested t LEFT JOIN k ON k.win = n.win AND k.cid = t.cid
),
omni AS (  -- chi-square test of homogeneity over all windows, per concept
    SELECT g.cid,
           sum(CASE WHEN t.pp > 0 AND t.pp < 1 THEN power(g.x - g.n * t.pp, 2) / (g.n * t.pp * (1 - t.pp)) END) AS chi2,
           count(*) - 1 AS df, any_value(t.pp) AS pp
    FROM grid g JOIN (SELECT cid, sum(x) / sum(n) AS pp FROM grid GROUP BY cid) t ON t.cid = g.cid
    GROUP BY g.cid
),
omni_p AS (
    SELECT cid, CASE WHEN df < 1 OR pp <= 0 OR pp >= 1 THEN 1.0
                     ELSE normal_sf((power(chi2 / df, 1.0 / 3) - (1 - 2 / (9 * df))) / sqrt(2 / (9 * df))) END AS p
    FROM omni
),
omni_q AS (
    SELECT cid, least(1.0, min(p * m / r) OVER (ORDER BY r DESC ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW))
                AS homogeneity_q
    FROM (SELECT *, row_number() OVER (ORDER BY p) AS r, count(*) OVER () AS m FROM omni_p)
),
cmp AS (
    SELECT g.win, g.cid, g.n AS n1, g.x AS x1, r.n AS n2, r.x AS x2
    FROM grid g JOIN grid r ON r.cid = g.cid AND r.win = (SELECT win FROM ref)
    WHERE g.win <> (SELECT win FROM ref)
),
z AS (
    SELECT *, x1 / n1 AS p1, x2 / n2 AS p2, (x1 + x2) / (n1 + n2) AS pp,
           CASE WHEN (x1 + x2) IN (0, n1 + n2) THEN 1.0
                ELSE 2 * normal_sf(abs(x1 / n1 - x2 / n2) / sqrt(pp * (1 - pp) * (1 / n1 + 1 / n2))) END AS p_value
    FROM cmp
),
bh AS (
    SELECT *, row_number() OVER (ORDER BY p_value) AS r, count(*) OVER () AS m FROM z
),
q AS (
    SELECT *, least(1.0, min(p_value * m / r) OVER (ORDER BY r DESC ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW))
              AS q_value
    FROM bh
)
SELECT win::DATE AS window_start, concept_name(cid) AS concept,
       CASE WHEN p1 > p2 THEN 'rising' ELSE 'falling' END AS direction,
       p2 AS reference_prevalence, p1 AS prevalence, p1 - p2 AS change, n1 AS n_images, p_value, q_value,
       homogeneity_q
FROM q JOIN omni_q USING (cid)
WHERE q_value < $alpha AND abs(p1 - p2) >= $min_change AND homogeneity_q < $alpha
ORDER BY abs(p1 - p2) DESC, window_start, concept;
