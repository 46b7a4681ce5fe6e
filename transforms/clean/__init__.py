"""Clean: Unicode and OpenCC normalisation, language, tag rules, personal data, domain and lexicon; the clean stage tags every row."""
