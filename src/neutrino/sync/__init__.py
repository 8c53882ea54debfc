"""Server -> agents: ``snapshot`` builds the complete intent of one host from the database (and its JSON
form); ``feed`` wakes waiting agents when the global change revision moves.
"""
