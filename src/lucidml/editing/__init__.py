"""WikiBigEdit: lifelong knowledge editing on real Wikidata changes.

``wikidata`` parses dumps and diffs snapshots, ``build`` turns changes into benchmark
records, ``evaluate`` scores them, ``methods`` holds the editors and ``lifelong`` runs
them over timesteps.
"""
