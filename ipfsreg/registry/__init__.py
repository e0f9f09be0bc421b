"""The OCI distribution-spec v1.1 registry front end (Quart on trio) over UnixFS DAGs in LevelDB."""
