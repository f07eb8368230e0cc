"""The evaluation: the pipeline (analysis, highlights, self-critique, save), highlight location,
the bundled sample documents and agents, and seeding them."""
