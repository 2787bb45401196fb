-- concept_drift: prevalence and mean weight of chosen concepts per time window.
--
-- Pure SQL version of `lance-concepts drift --concepts ...` (which adds the change tests, BH,
-- the Jensen-Shannon divergence and a plot, and aggregates faster).
--
-- @ident time_column = timestamp      a timestamp or date column of images
-- @param concepts    VARCHAR[]        concept names, e.g. --param concepts=red,grass
-- @param every       VARCHAR = 'month'  day | week | month | quarter | year
-- @param min_weight  DOUBLE  = 0.0    a concept counts as present above this weight
WITH c AS (
    SELECT name AS concept, concept_id(name) AS cid FROM (SELECT unnest($concepts) AS name)
),
w AS (
    SELECT date_trunc($every, {{time_column}}) AS window_start, concept_ids, concept_weights
    FROM images
    WHERE concept_ids IS NOT NULL AND {{time_column}} IS NOT NULL
),
x AS (
    SELECT w.window_start, c.concept,
           coalesce(w.concept_weights[list_position(w.concept_ids, c.cid)], 0.0) AS weight
    FROM w CROSS JOIN c
)
SELECT window_start::DATE AS window_start,
       concept,
       count(*) AS n_images,
       count(*) FILTER (WHERE weight > $min_weight) AS n_present,
       n_present / n_images AS prevalence,
       wilson_low(n_present, n_images) AS prevalence_low,
       wilson_high(n_present, n_images) AS prevalence_high,
       avg(weight) AS mean_weight
FROM x
GROUP BY ALL
ORDER BY window_start, concept;
