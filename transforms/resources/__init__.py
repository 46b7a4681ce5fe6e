"""Data files shipped with the transforms: word lists, and the language-ID model copied in at build time."""
