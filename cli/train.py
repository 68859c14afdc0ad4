"""``nbcnn train`` (placeholder while the model API lands)."""
import click


@click.command()
def train():
    """Train a model."""
