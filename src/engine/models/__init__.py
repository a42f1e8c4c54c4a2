"""Model bundles: manifest, reference tables, loading, validation and hot swap."""
