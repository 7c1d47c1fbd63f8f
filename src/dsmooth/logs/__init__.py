"""What a run leaves behind: the result log (TSV, one durable row per image), its provenance
record, and the query column of remote classifiers."""
