"""Building blocks and the Spec -> nn.Module compiler."""
