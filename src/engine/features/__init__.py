"""Raw trades to model inputs: columns, validation and the feature catalog."""
