"""Output formats: what a request carries, what officers see, how its file is made and checked.

One interface (`base.OutputFormat`), one module per format (`raw`, `dsse`,
`bundle`), and `registry.FORMATS`, which finds them.
"""

__all__: list[str] = []
