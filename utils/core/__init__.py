"""Building blocks with no stage knowledge: files, dataset layout, video, resources, assets, errors."""
