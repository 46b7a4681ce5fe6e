"""Select: the [select] thresholds applied to the tags clean wrote."""
