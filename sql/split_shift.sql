-- split_shift: per label, concepts whose prevalence differs between a split and the reference split
-- (the SpLiCE Waterbirds finding: train unlike val/test).
--
-- Two-sided pooled two-proportion z-test per (label, concept, split), Benjamini-Hochberg over all.
--
-- @ident label_column = label            the label column of images
-- @ident split_column = split            the split column of images
-- @param reference_split VARCHAR = 'train'  the split the others are compared with
-- @param min_weight  DOUBLE  = 0.0       a concept counts as present above this weight
-- @param min_support BIGINT  = 5         (label, concept) pairs seen in fewer images are not tested
-- @param min_change  DOUBLE  = 0.10      smallest absolute change of prevalence to report
-- @param alpha       DOUBLE  = 0.05      false discovery rate
WITH base AS (
    SELECT {{label_column}} AS label, CAST({{split_column}} AS VARCHAR) AS split, concept_ids, concept_weights
    FROM images WHERE concept_ids IS NOT NULL AND {{label_column}} IS NOT NULL AND {{split_column}} IS NOT NULL
),
n AS (SELECT label, split, count(*) AS n FROM base GROUP BY label, split),
u AS (SELECT label, split, unnest(concept_ids) AS cid, unnest(concept_weights) AS w FROM base),
k AS (SELECT label, split, cid, count(*) FILTER (WHERE w > $min_weight) AS x FROM u GROUP BY ALL),
pairs AS (SELECT label, cid FROM k GROUP BY label, cid HAVING sum(x) >= $min_support),
grid AS (
    SELECT n.label, n.split, n.n, p.cid, coalesce(k.x, 0) AS x
    FROM n JOIN pairs p ON p.label = n.label
    LEFT JOIN k ON k.label = n.label AND k.split = n.split AND k.cid = p.cid
),
cmp AS (
    SELECT g.label, g.cid, g.split, g.n AS n1, g.x AS x1, r.n AS n2, r.x AS x2
    FROM grid g JOIN grid r ON r.label = g.label AND r.cid = g.cid AND r.split = $reference_split
    WHERE g.split <> $reference_split
),
z AS (
    SELECT *, x1 / n1 AS p1, x2 / n2 AS p2, (x1 + x2) / (n1 + n2) AS pp,
           CASE WHEN (x1 + x2) IN (0, n1 + n2) THEN 1.0
                ELSE 2 * normal_sf(abs(x1 / n1 - x2 / n2) / sqrt(pp * (1 - pp) * (1 / n1 + 1 / n2))) END AS p_value
    FROM cmp
),
bh AS (SELECT *, row_number() OVER (ORDER BY p_value) AS r, count(*) OVER () AS m FROM z),
q AS (
    SELECT *, least(1.0, min(p_value * m / r) OVER (ORDER BY r DESC ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW))
              AS q_value
    FROM bh
)
SELECT label, concept_name(cid) AS concept, split, $reference_split AS reference_split, n1 AS n_split,
       n2 AS n_reference, p1 AS prevalence, p2 AS reference_prevalence, p1 - p2 AS change, p_value, q_value
FROM q
WHERE q_value < $alpha AND abs(p1 - p2) >= $min_change
ORDER BY abs(p1 - p2) DESC, label, concept;
