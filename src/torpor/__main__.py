from torpor.cli import app

app(prog_name="torpor")
