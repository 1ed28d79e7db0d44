"""What users call from their own code: the training dataset and QA pages."""
