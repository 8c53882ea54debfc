"""The HTTP boundary: Neutron v2.0 wire conventions (validation, policy on attributes, filters, fields,
sorting, pagination, tags, errors) around the services, plus the agents' channel. Nothing below this
package sees a request object or raw JSON.
"""
