-- window_drift: prevalence of chosen concepts in a moving window against the window before it.
--
-- Pure SQL version of `lance-concepts drift --current "last 7 days" --reference "previous 28 days"`
-- (which adds the change tests, BH, alerts, any window spelling, and reads the daily aggregates).
-- The current window is the `current_days` days ending with `now` (both included); the reference is
-- the `reference_days` days just before it.
--
-- @ident time_column = timestamp       a timestamp or date column of images
-- @param concepts       VARCHAR[]      concept names, e.g. --param concepts=red,grass
-- @param now            DATE = NULL    the last day of the current window (default: the table's last day)
-- @param current_days   INTEGER = 7    length of the current window in days
-- @param reference_days INTEGER = 28   length of the reference window in days
-- @param min_weight     DOUBLE = 0.0   a concept counts as present above this weight
WITH bounds AS (
    SELECT coalesce($now::DATE, (SELECT max({{time_column}})::DATE FROM images)) + 1 AS cur_end
),
b AS (
    SELECT cur_end, cur_end - $current_days::INTEGER AS cur_start,
           cur_end - $current_days::INTEGER - $reference_days::INTEGER AS ref_start
    FROM bounds
),
c AS (
    SELECT name AS concept, concept_id(name) AS cid FROM (SELECT unnest($concepts) AS name)
),
w AS (
    SELECT CASE WHEN {{time_column}}::DATE >= b.cur_start THEN 'current' ELSE 'reference' END AS period,
           CASE WHEN {{time_column}}::DATE >= b.cur_start THEN b.cur_start ELSE b.ref_start END AS window_start,
           concept_ids, concept_weights
    FROM images, b
    WHERE concept_ids IS NOT NULL AND {{time_column}}::DATE >= b.ref_start AND {{time_column}}::DATE < b.cur_end
),
x AS (
    SELECT w.period, w.window_start, c.concept,
           coalesce(w.concept_weights[list_position(w.concept_ids, c.cid)], 0.0) AS weight
    FROM w CROSS JOIN c
)
SELECT period,
       window_start,
       concept,
       count(*) AS n_images,
       count(*) FILTER (WHERE weight > $min_weight) AS n_present,
       n_present / n_images AS prevalence,
       wilson_low(n_present, n_images) AS prevalence_low,
       wilson_high(n_present, n_images) AS prevalence_high,
       avg(weight) AS mean_weight
FROM x
GROUP BY ALL
ORDER BY period DESC, concept;
