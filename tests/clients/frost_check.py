"""FROST-Server's own Python client (frost_sta_client) against the hub's SensorThings
API: Things, then a Datastream found by a filter and read with an expand, then its
Observations with a filter, an order and small pages (the client follows nextLink)."""
import sys

import frost_sta_client as fsc

service = fsc.SensorThingsService(sys.argv[1])
things = list(service.things().query().list())
names = sorted(t.name for t in things)
print("things:", names)
assert names == ["aq-1", "bin-a", "bin-b"], names

found = list(
    service.datastreams()
    .query()
    .filter("Thing/name eq 'bin-a' and ObservedProperty/name eq 'fill_level'")
    .expand("Thing,ObservedProperty")
    .list()
)
assert len(found) == 1, found
ds = found[0]
print("datastream:", ds.id, ds.unit_of_measurement.symbol, ds.thing.name, ds.observed_property.name)
assert (ds.thing.name, ds.observed_property.name, ds.unit_of_measurement.symbol) == ("bin-a", "fill_level", "%")

again = service.datastreams().find(ds.id)
assert again.name == ds.name, (again.name, ds.name)

obs = ds.get_observations().query().filter("result ge 30").orderby("phenomenonTime", "ASC").top(2).list()
results = [o.result for o in obs]
print("observations:", results)
assert results == [30, 40, 50, 60], results
print("frost_sta_client: walked Things -> Datastreams -> Observations")
