-- The repairs made to Claude's answers before they were saved (roastq/evaluation/answers.py):
-- one object per repair, {"step", "kind", "path", "detail"}, e.g. a highlight header cut to its
-- 200-character limit. Empty when the answers honoured their schemas.
ALTER TABLE evaluation_versions ADD COLUMN repairs jsonb NOT NULL DEFAULT '[]';
