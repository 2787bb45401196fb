-- spurious_correlations: concepts over-represented in each label compared with the other labels.
--
-- For label L and concept c: prevalence in L vs in the other labels, ratio = the two divided (what a
-- reader compares), lift = P(c | L) / P(c) (against all images; min_lift filters on it),
-- nPMI, one-sided pooled two-proportion z-test (L more often), Benjamini-Hochberg over every
-- (label, concept) pair with at least min_support images. Concepts whose words equal or contain
-- the label's words (or the reverse) are left out; the Python / CLI spurious also folds plurals,
-- uses the table's CLIP text encoder to leave out near-synonyms, and Fisher's exact test for small
-- counts. Python / CLI spurious also reports under-represented concepts and lists the excluded
-- concepts with the rule that excluded each; with --label-match string its over-represented rows
-- are this query's rows.
--
-- @ident label_column = label          the label column of images
-- @param min_weight  DOUBLE  = 0.0     a concept counts as present above this weight
-- @param min_support BIGINT  = 5       pairs seen in fewer images are not tested
-- @param min_lift    DOUBLE  = 1.5     smallest lift to report
-- @param alpha       DOUBLE  = 0.05    false discovery rate
-- @param top         BIGINT  = 10      at most this many concepts per label
WITH base AS (
    SELECT {{label_column}} AS label, concept_ids, concept_weights
    FROM images WHERE concept_ids IS NOT NULL AND {{label_column}} IS NOT NULL
),
nl AS (SELECT label, count(*) AS n FROM base GROUP BY label),
tot AS (SELECT sum(n) AS n FROM nl),
u AS (SELECT label, unnest(concept_ids) AS cid, unnest(concept_weights) AS w FROM base),
k AS (SELECT label, cid, count(*) FILTER (WHERE w > $min_weight) AS a FROM u GROUP BY label, cid),
kc AS (SELECT cid, sum(a) AS kc FROM k GROUP BY cid),
s AS (
    SELECT k.label, k.cid, concept_name(k.cid) AS concept, nl.n AS n_label, k.a AS n_present, kc.kc,
           tot.n AS n_total,
           k.a / nl.n AS prevalence,
           (kc.kc - k.a) / (tot.n - nl.n) AS prevalence_other,
           (k.a / nl.n) / (kc.kc / tot.n) AS lift,
           CASE WHEN k.a = tot.n THEN 1.0
                ELSE ln((k.a / tot.n) / ((nl.n / tot.n) * (kc.kc / tot.n))) / -ln(k.a / tot.n) END AS npmi,
           (kc.kc) / tot.n AS pp
    FROM k JOIN nl USING (label) JOIN kc USING (cid), tot
    WHERE k.a >= $min_support
),
z AS (
    SELECT *, CASE WHEN kc IN (0, n_total) OR n_total = n_label THEN 1.0
                   ELSE normal_sf((prevalence - prevalence_other)
                                  / sqrt(pp * (1 - pp) * (1 / n_label + 1 / (n_total - n_label)))) END AS p_value
    FROM s
),
bh AS (SELECT *, row_number() OVER (ORDER BY p_value) AS r, count(*) OVER () AS m FROM z),
q AS (
    SELECT *, least(1.0, min(p_value * m / r) OVER (ORDER BY r DESC ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW))
              AS q_value
    FROM bh
),
named AS (
    SELECT *,
           string_split(regexp_replace(lower(concept), '[^[:alnum:]]+', ' ', 'g'), ' ') AS cw,
           string_split(regexp_replace(lower(CAST(label AS VARCHAR)), '[^[:alnum:]]+', ' ', 'g'), ' ') AS lw
    FROM q
),
ranked AS (
    SELECT *, row_number() OVER (PARTITION BY label ORDER BY prevalence - prevalence_other DESC, lift DESC) AS rank
    FROM named
    WHERE q_value < $alpha AND lift >= $min_lift AND NOT (list_has_all(lw, cw) OR list_has_all(cw, lw))
)
SELECT label, concept, rank, n_label, n_present, prevalence, prevalence_other,
       prevalence - prevalence_other AS change,
       CASE WHEN prevalence_other > 0 THEN prevalence / prevalence_other ELSE 'inf'::DOUBLE END AS ratio, lift, npmi, p_value, q_value
FROM ranked
WHERE rank <= $top
ORDER BY label, rank;
