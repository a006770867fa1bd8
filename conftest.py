"""pytest runs the Question 1 tests in exercise order: 1.1, 1.2, ..., 1.9, 1.10, 1.11, ...

pytest, like unittest, lists a TestCase's methods alphabetically; test_functions.py orders
them for unittest (its load_tests), and this hook does the same for pytest.
"""


def pytest_collection_modifyitems(items):
    slots = [
        i
        for i, item in enumerate(items)
        if item.nodeid.split("::")[0].endswith("test_functions.py")
    ]
    if not slots:
        return
    from test_functions import TestClass, exercise_order

    by_name = {items[i].name: items[i] for i in slots}
    for slot, name in zip(slots, exercise_order(TestClass, list(by_name))):
        items[slot] = by_name[name]
