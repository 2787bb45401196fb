-- concept_prevalence: how common each concept is over the whole table.
--
-- prevalence = share of images (with concepts) whose weight is above min_weight, with its 95%
-- Wilson interval; mean_weight = average weight over all those images (absent = 0).
--
-- @param min_weight DOUBLE = 0.0    a concept counts as present above this weight
-- @param limit      BIGINT = 50     the most prevalent concepts first
WITH n AS (SELECT count(*) AS n FROM images WHERE concept_ids IS NOT NULL),
c AS (
    SELECT concept_id, count(*) FILTER (WHERE weight > $min_weight) AS n_present, sum(weight) AS weight_sum
    FROM image_concepts
    GROUP BY concept_id
)
SELECT concept_name(c.concept_id) AS concept,
       c.n_present,
       n.n AS n_images,
       c.n_present / n.n AS prevalence,
       wilson_low(c.n_present, n.n) AS prevalence_low,
       wilson_high(c.n_present, n.n) AS prevalence_high,
       c.weight_sum / n.n AS mean_weight
FROM c, n
ORDER BY c.n_present DESC, c.concept_id
LIMIT $limit;
