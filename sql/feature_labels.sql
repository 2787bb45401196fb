-- feature_labels: images whose FALCON feature groups carry a concept label ("images whose features
-- are labelled 'stripes'"). Needs a `lance-concepts falcon` run first (tables features, image_features).
--
-- @param concept         VARCHAR                the label, e.g. 'stripes'
-- @param representation  VARCHAR = 'embedding'  the explained vector column
-- @param top             BIGINT  = 3            only the group's first `top` labels count
-- @param interpretable   BOOLEAN = false        only groups that passed the coherence test
-- @param limit           BIGINT  = 100
SELECT f.image_id, f.group_id, f.features, f.labels, f.exact, f.interpretable, g.coherence, g.n_high, g.spurious
FROM image_features f JOIN features g ON g.representation = f.representation AND g.group_id = f.group_id
WHERE f.representation = $representation AND list_contains(f.labels[1:$top], $concept)
  AND (NOT $interpretable OR f.interpretable)
ORDER BY f.exact DESC, g.coherence DESC NULLS LAST, f.image_id
LIMIT $limit;
