"""What a query is: augmentation, conditions, front-ends and datasets of augmented segments."""
