-- concept_cooccurrence: the concepts that appear together with one concept.
--
-- Among the images where `concept` has weight above min_weight: how often each other concept is
-- present, its prevalence elsewhere, lift = P(other | concept) / P(other) and nPMI.
--
-- @param concept     VARCHAR           the concept name
-- @param min_weight  DOUBLE  = 0.0     a concept counts as present above this weight
-- @param min_support BIGINT  = 5       co-occurring in fewer images: not listed
-- @param limit       BIGINT  = 25      at most this many concepts, highest nPMI first
WITH base AS (
    SELECT concept_ids, concept_weights,
           coalesce(concept_weights[list_position(concept_ids, concept_id($concept))], 0.0) > $min_weight AS has
    FROM images WHERE concept_ids IS NOT NULL
),
n AS (SELECT count(*) AS n, count(*) FILTER (WHERE has) AS n_with FROM base),
u AS (SELECT has, unnest(concept_ids) AS cid, unnest(concept_weights) AS w FROM base),
k AS (
    SELECT cid, count(*) FILTER (WHERE w > $min_weight AND has) AS both_,
           count(*) FILTER (WHERE w > $min_weight) AS total
    FROM u GROUP BY cid
)
SELECT concept_name(cid) AS concept, both_ AS n_together, total AS n_present,
       both_ / n.n_with AS prevalence_with, (total - both_) / (n.n - n.n_with) AS prevalence_without,
       (both_ / n.n_with) / (total / n.n) AS lift,
       CASE WHEN both_ = n.n THEN 1.0
            ELSE ln((both_ / n.n) / ((n.n_with / n.n) * (total / n.n))) / -ln(both_ / n.n) END AS npmi
FROM k, n
WHERE both_ >= $min_support AND cid <> concept_id($concept)
ORDER BY npmi DESC, concept
LIMIT $limit;
