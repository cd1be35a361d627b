"""What every room uses: the registry, configuration loading, errors, provenance, atomic writes."""
