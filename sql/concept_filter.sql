-- concept_filter: images whose weight for one concept is above a threshold, strongest first.
--
-- The matches come from the postings (image_concepts) through the BITMAP index on concept_id
-- (the concept_images table macro; DuckDB pushes concept_id = ... into the Lance scan), then the
-- image rows are joined for their uri. Python: lance_concepts.reports.filter (several concepts,
-- AND/OR, other columns); CLI: lance-concepts filter.
--
-- @param concept    VARCHAR          the concept name (an unknown name fails with the closest names)
-- @param min_weight DOUBLE  = 0.1    the weight must be strictly greater
-- @param limit      BIGINT  = 1000   at most this many images
SELECT i.id, i.uri, m.weight
FROM concept_images($concept, $min_weight) AS m
JOIN images AS i ON i.id = m.image_id
ORDER BY m.weight DESC, i.id
LIMIT $limit;
