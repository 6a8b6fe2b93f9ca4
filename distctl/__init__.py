"""distctl: serve language-model generations whose distribution across samples follows a target."""

__version__ = "0.1.0"
