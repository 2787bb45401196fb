-- error_slices: concepts whose presence raises a model's error rate, over all images and per label.
--
-- An image is an error when its prediction differs from its label. For a scope (all images, or one
-- label with at least 2 x min_support images) and a concept c: error rate of the scope's images
-- with c vs without, support on both sides >= min_support, pooled two-proportion z-test (two-sided),
-- Benjamini-Hochberg over every tested (scope, concept). Reported: q < alpha and a higher error
-- rate with the concept, largest rise first. The Python / CLI slices also tests pairs of concepts,
-- uses Fisher's exact test for small counts, gives example images and worst-group accuracy.
--
-- @ident label_column = label          the label column of images
-- @ident prediction_column = predicted the model's prediction column
-- @param min_weight  DOUBLE  = 0.0     a concept counts as present above this weight
-- @param min_support BIGINT  = 20      slices (and their complements) smaller than this are not tested
-- @param alpha       DOUBLE  = 0.05    false discovery rate
WITH base AS (
    SELECT CAST({{label_column}} AS VARCHAR) AS label,
           CAST(({{prediction_column}} IS DISTINCT FROM {{label_column}}) AS INTEGER) AS err,
           concept_ids, concept_weights
    FROM images WHERE concept_ids IS NOT NULL AND {{label_column}} IS NOT NULL
),
scoped AS (
    SELECT 'all' AS scope, * FROM base
    UNION ALL
    SELECT label AS scope, * FROM base
),
tot AS (SELECT scope, count(*) AS n, sum(err) AS e FROM scoped GROUP BY scope),
u AS (
    SELECT scope, err, unnest(concept_ids) AS cid, unnest(concept_weights) AS w FROM scoped
),
k AS (
    SELECT scope, cid, count(*) FILTER (WHERE w > $min_weight) AS n_in,
           sum(err) FILTER (WHERE w > $min_weight) AS e_in
    FROM u GROUP BY scope, cid
),
s AS (
    SELECT k.scope, concept_name(k.cid) AS concept, tot.n AS n_scope, k.n_in AS n_slice,
           k.e_in / k.n_in AS error_rate, (tot.e - k.e_in) / (tot.n - k.n_in) AS error_rate_rest,
           tot.e / tot.n AS pp, k.e_in, tot.e, tot.n
    FROM k JOIN tot USING (scope)
    WHERE k.n_in >= $min_support AND tot.n - k.n_in >= $min_support
      AND (k.scope = 'all' OR tot.n >= 2 * $min_support)
),
z AS (
    SELECT *, CASE WHEN pp IN (0, 1) THEN 1.0
                   ELSE 2 * normal_sf(abs(error_rate - error_rate_rest)
                                      / sqrt(pp * (1 - pp) * (1 / n_slice + 1 / (n_scope - n_slice)))) END AS p_value
    FROM s
),
bh AS (SELECT *, row_number() OVER (ORDER BY p_value) AS r, count(*) OVER () AS m FROM z),
q AS (
    SELECT *, least(1.0, min(p_value * m / r) OVER (ORDER BY r DESC ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW))
              AS q_value
    FROM bh
)
SELECT scope, concept, n_scope, n_slice, error_rate, error_rate_rest, error_rate - error_rate_rest AS change,
       p_value, q_value
FROM q
WHERE q_value < $alpha AND error_rate > error_rate_rest
ORDER BY change DESC, q_value;
