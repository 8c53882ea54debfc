"""(contract documented as the package grows)"""
