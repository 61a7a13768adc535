"""The reference code's defaults, named once (docs/scheme.md, "Reference defaults")."""

UPPER = 0.65          # c1: the largest coefficient
DOM = 0.3             # c2: the smallest sum of the private coefficients (cross-dataset)
K_INSIDE = 4          # images per encryption, inside-dataset
K_CROSS = 6           # images per encryption, cross-dataset
NUM_PRIVATE_CROSS = 2  # private slots per encryption, cross-dataset (the rest are public)
PUBLIC_SIZE = 4000    # patches cut for a public pool
