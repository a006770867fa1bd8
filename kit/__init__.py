"""The course kit's machinery: everything the demos, report.py and the tests share that a
student does not edit (see README.md, "Repository layout").
"""
